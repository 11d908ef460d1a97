"""The regulation's rules R1..R11 as pure functions over Deals, and their evaluation."""
