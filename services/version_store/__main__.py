from confbus.runtime.service import service_main
from confbus.version_store.service import add_args, main

service_main("version-store", main, add_args)
