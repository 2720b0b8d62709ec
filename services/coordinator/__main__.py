from services.coordinator.service import add_args, main
from services.runtime.service import service_main

service_main("coordinator", main, add_args)
