"""The claims ledger: one module per paper, each claim a check returning a Verdict (see DESIGN.md)."""
