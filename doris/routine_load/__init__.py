"""The Doris DDL (tables/) and Routine Load jobs (jobs/) that load pacsflow's topics into Doris."""
