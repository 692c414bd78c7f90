"""Small programs the sandbox tests run inside a sandbox, shared by several directories."""

# A Python process whose state lives only in memory: a random token (which process this
# is) and a count it writes to /tmp/c every 20 ms. After a restore the same token with a
# higher count shows the very process went on where it was.
COUNTER = (
    "import os, time\n"
    "token = os.urandom(6).hex()\n"
    "n = 0\n"
    "while True:\n"
    "    n += 1\n"
    "    open('/tmp/c.tmp', 'w').write(f'{token} {n}')\n"
    "    os.replace('/tmp/c.tmp', '/tmp/c')\n"
    "    time.sleep(0.02)\n"
)
