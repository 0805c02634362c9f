"""Helpers the tests import (``from tests.support.daemon import Daemon``): no tests live here."""
