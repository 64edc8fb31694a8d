from twisted.application.service import ServiceMaker

kwp = ServiceMaker("kwp", "kwp.tap", "kwp: a webhooks proxy (receive, verify, store, deliver)", "kwp")
