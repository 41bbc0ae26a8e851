"""Apache Doris: tables and Routine Load jobs fed from pacsflow's topics."""
