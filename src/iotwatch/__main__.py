from iotwatch.cli import entry

entry()
