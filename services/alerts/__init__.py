"""Alert rules, their evaluation, the alerts they open and the notifications they send."""
