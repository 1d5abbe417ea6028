"""The fly64 dose/overlap study: how reconstruction quality depends on photon dose and scan overlap."""
