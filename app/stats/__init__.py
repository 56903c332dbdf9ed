"""Windowed statistics: event-time window aggregates (``windows``, ``sketch``) and the faust agents
that fold, hand over and merge them (``agents``)."""
