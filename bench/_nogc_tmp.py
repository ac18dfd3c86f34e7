import gc

gc.disable()
from yousync.api.app import app  # noqa
