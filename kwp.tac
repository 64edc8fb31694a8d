# twistd -ny kwp.tac: the same service as `twistd kwp`, configured through the
# environment (KWP_CONFIG, KWP_LISTEN, KWP_DATABASE, KWP_LOG_FORMAT,
# KWP_LOG_LEVEL, UI_ACCESS_TOKEN), for supervisors that start .tac files.
from twisted.application import service

from kwp.tap import Options, makeService

options = Options()
options.parseOptions([])
application = service.Application("kwp")
makeService(options).setServiceParent(application)
