"""The broker process: the bus every PowMon process publishes to and subscribes from."""
