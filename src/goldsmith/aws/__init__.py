"""The AWS side of goldsmith: clients, AMIs, SSM, the reaper, reports and the local twin.

Every function takes an `Aws` (see `clients`) and the region it acts in, so the same code
talks to real AWS, to the moto twin (an endpoint override) and to moto in-process in tests.
"""
