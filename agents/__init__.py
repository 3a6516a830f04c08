"""How events flow: the Faust app and its agents."""
