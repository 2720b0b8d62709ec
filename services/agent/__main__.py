import sys

from confbus.agent.main import main

sys.exit(main())
