from confbus.distributor.service import add_args, main
from confbus.runtime.service import service_main

service_main("distributor", main, add_args)
