from confbus.console.service import main

main()
