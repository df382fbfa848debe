from twisted.application.service import ServiceMaker

wraith = ServiceMaker(
    "wraith",
    "wraith_conch.tap",
    "SSH gateway that holds every command until it is approved",
    "wraith",
)
