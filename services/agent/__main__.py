import sys

from confbus.runtime import natspy

natspy.install()  # before anything imports nats-py: ~1.5 MB less for the agent's life

from confbus.agent.main import main  # noqa: E402

sys.exit(main())
