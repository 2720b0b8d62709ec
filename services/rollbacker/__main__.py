from services.rollbacker.service import add_args, main
from services.runtime.service import service_main

service_main("rollbacker", main, add_args)
