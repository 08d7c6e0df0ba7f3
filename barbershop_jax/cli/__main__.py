import sys

from barbershop_jax.cli.main import main

sys.exit(main())
