"""Hello asyncio world: asyncio.run() a coroutine that prints the time, sleeps, prints again.

Seed: "An introduction to asyncio in python" (Geek Culture).
"""

import asyncio
import time


async def hello_world():
    print(time.ctime())
    await asyncio.sleep(1.0)
    print(time.ctime())


asyncio.run(hello_world())
