from confbus.coordinator.service import add_args, main
from confbus.runtime.service import service_main

service_main("coordinator", main, add_args)
