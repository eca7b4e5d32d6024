"""What watches: collectors, recognisers, the state and its one event model. Imports nothing of ours."""

from collectors import aio

aio.install()
