#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine (Python 3.11 + pip, root) and run it.
# PostgreSQL comes from the `pgserver` package, SMTP from `aiosmtpd`, fake providers are started
# by the tests on 127.0.0.1; headless Chromium (Debian packages) for the browser test.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --disable-pip-version-check -q -e '.[test]'
if [ -f scripts/install-browser.sh ]; then
  bash scripts/install-browser.sh
fi
# Bytecode is cached for this run even where the environment says not to write it
# (PYTHONDONTWRITEBYTECODE): the suite starts a few hundred Python processes (the CLI, Prefect
# flow runs, delivery processes, web servers), and each would compile the project's modules
# from source again — about half a second of CPU each, most of a minute of the suite.
unset PYTHONDONTWRITEBYTECODE
# Three workers on two cores: a third of a worker's time is spent waiting (on the `nurture` and
# Prefect processes a test starts, on servers coming up), and the third worker fills it — the
# suite took 244 s with two and 216 s with three on this 2-core machine, 243 s with four.
exec python -m pytest -n 3 --dist loadgroup -p no:cacheprovider -p no:benchmark "$@"
