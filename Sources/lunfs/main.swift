print("lunfs")
