from services.distributor.service import add_args, main
from services.runtime.service import service_main

service_main("distributor", main, add_args)
