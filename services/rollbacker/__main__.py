from confbus.rollbacker.service import add_args, main
from confbus.runtime.service import service_main

service_main("rollbacker", main, add_args)
