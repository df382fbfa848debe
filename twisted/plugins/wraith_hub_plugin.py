from twisted.application.service import ServiceMaker

wraith_hub = ServiceMaker(
    "wraith-hub",
    "wraith_conch.hub_tap",
    "Approval hub for wraith gateways, with a web console for reviewers",
    "wraith-hub",
)
