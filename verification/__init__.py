"""The claims ledger: each claim a check returning a Verdict (see _verdict.py and DESIGN.md)."""
