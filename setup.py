from setuptools import setup

setup(
    name="wraith_conch",
    version="0.1.0",
    description="An SSH gateway that holds every command until a reviewer approves it",
    python_requires=">=3.11",
    packages=[
        "wraith_conch",
        "wraith_conch.approval",
        "wraith_conch.approval.console",
        "wraith_conch.audit",
        "wraith_conch.outbound",
        "wraith_conch.gateway",
        "wraith_conch.interception",
        "wraith_conch.upstream",
        # No __init__.py there: Twisted extends twisted.plugins.__path__.
        "twisted.plugins",
    ],
    package_data={
        "wraith_conch": ["py.typed"],
        "wraith_conch.approval.console": ["static/*.html", "static/*.js", "static/*.css"],
        "twisted.plugins": ["wraith_plugin.py", "wraith_hub_plugin.py"],
    },
    entry_points={
        "console_scripts": [
            "wraith-review = wraith_conch.review_cli:console_main",
            "wraith-replay = wraith_conch.replay:main",
        ]
    },
    install_requires=[
        "twisted[conch]>=24.7",
        "cryptography>=42",
        "autobahn>=24.4",
        "txtorcon>=23.11",
        "pyasn1",
        "attrs>=23.1",
        "zope.interface",
        "pyte>=0.8.2",
        # Reviewer passwords in --reviewers are bcrypt hashes.
        "bcrypt>=4.1",
    ],
    extras_require={
        "test": [
            "pytest",
            "wheel",
            "pytest-twisted",
            "hypothesis",
            "paramiko",
            "pexpect",
            "ruff",
            "playwright",
        ],
    },
)
