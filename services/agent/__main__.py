import sys

from services.agent.main import main

sys.exit(main())
