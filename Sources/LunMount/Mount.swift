import LunEngine
