def build(settings):
    print(settings.suite.name, settings.paths.suites, len(settings.suite.steps))
show = build
