"""Unit tests of the Cinder driver, run with Debian's Python and Cinder:
``cd integrations/cinder && /usr/bin/python3 -m unittest discover -s tests -t . -v``
(as root; a real volagentd from ``$VOLAGENT_REPO``, default this repository,
whose dist/ must be built)."""

