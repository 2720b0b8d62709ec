from confbus.historian.service import add_args, main
from confbus.runtime.service import service_main

service_main("historian", main, add_args)
