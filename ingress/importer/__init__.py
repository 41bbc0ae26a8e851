"""`pacsflow import PATH...`: folders, zip files and DICOMDIRs stored through the C-STORE's receiver.

``sources`` lists what the paths hold, ``journal`` remembers what was stored (so that a run started
again skips it), ``progress`` shows how far it is, ``run`` does the work.
"""
