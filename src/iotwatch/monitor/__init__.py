"""`iotwatch monitor`: the two-step detector on traffic it has never seen, offline and live.

Modules: ``engine`` (the per-device vote, open set and autoencoder scoring of flow tables),
``openset`` (the vote and its calibration), ``run`` (captures and interfaces into the flow
stream), ``live`` (AF_PACKET capture, standard library), ``orient`` (which end is the device),
``forest``/``autoencoder`` (with ``iotwatch.arrays``: the bundle's models with numpy only), ``report`` (HTML),
``cli``. The bundle itself is ``iotwatch.bundle``. Layout and usage: docs/monitor.md.
"""
