"""The records of the platform, defined once.

Every stage takes and returns these pydantic models; the Arrow schemas of the Lance tables are
derived from them in :mod:`schemas.tables`, so the code and the tables cannot drift apart.
"""
