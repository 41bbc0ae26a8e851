"""`pacsflow dev`: the whole system on one machine, as children of one supervisor."""
