"""Algorithms written against wse's public API, as a user would write them."""
from . import models, reference, sharded
