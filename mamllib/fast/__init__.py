"""Speed only. Each module names the readable code it replaces, and a test holds it
equal to that code (to the per-task loop, and the loop to finite differences)."""
