# The device database of the example lab: simulated ophyd devices, no hardware needed.
#
# The master loads this file at start and again on `labpipe-client scan-devices` (RPC
# `device_db.scan()`); a broken edit is rejected and the last good version stays in
# force. It must define the dict `device_db`; each entry is one of:
#
#   {"type": "local", "module": "pkg.mod", "class": "Name", "arguments": {...}}
#       created in the worker on the experiment's first `get_device(key)`. A class whose
#       constructor's first parameter is `dmgr` is called ARTIQ style,
#       Name(device_manager, **arguments); others (ophyd devices) as Name(**arguments),
#       with `name` defaulting to the entry's key.
#   {"type": "controller", "host": "::1", "port": 3253, "command": "...", "target": "..."}
#       a device served over RPC by a controller process (pc_rpc protocol).
#   "other_key"
#       an alias: the same device under another name.

device_db = {
    # A simulated motor (ophyd.sim.SynAxis): set() moves it, read() gives its position.
    "motor": {
        "type": "local",
        "module": "ophyd.sim",
        "class": "SynAxis",
        "arguments": {"delay": 0.0, "egu": "mm"},
    },

    # A simulated detector whose counts are a Gaussian of the motor position. It needs
    # the motor itself, so it goes through a small ARTIQ-style wrapper that looks the
    # motor up by key; ARTIQ-style classes get no default name, hence "name".
    "det": {
        "type": "local",
        "module": "labpipe.worker.sim",
        "class": "MotorGauss",
        "arguments": {"name": "det", "motor": "motor", "center": 0.0, "Imax": 1000.0,
                      "sigma": 1.0},
    },

    # A plain ophyd Signal, e.g. a shutter state or a set point.
    "shutter": {
        "type": "local",
        "module": "ophyd",
        "class": "Signal",
        "arguments": {"value": 0},
    },

    # An alias: experiments written for "stage" drive the motor above.
    "stage": "motor",

    # A controller would look like this (not enabled: nothing listens on that port):
    # "laser": {"type": "controller", "host": "::1", "port": 3253,
    #           "command": "laser_controller -p {port}"},
}
