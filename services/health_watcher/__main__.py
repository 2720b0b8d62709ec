from confbus.health_watcher.service import add_args, main
from confbus.runtime.service import service_main

service_main("health-watcher", main, add_args)
