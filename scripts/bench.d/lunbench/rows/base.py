"""What a row does: set up its file, give the path for each test (re-creating a snapshot or
overlay first when the test must see first writes after one), and clean up."""


class Row:
    name = "?"

    def setup(self):
        raise NotImplementedError

    def path_for(self, test):
        raise NotImplementedError

    def after(self, test):
        pass

    def teardown(self):
        pass
