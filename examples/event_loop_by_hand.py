"""The same hello world without asyncio.run(): get_event_loop, create_task,
run_until_complete, close. Seed: "An introduction to asyncio in python" (Geek Culture).
"""

import asyncio
import time


async def hello_world():
    print(time.ctime())
    await asyncio.sleep(1.0)
    print(time.ctime())


# With no loop set, get_event_loop() creates one through the event loop policy
# (Python 3.12 and 3.13 warn that this is deprecated, 3.14 refuses; the seed shows it).
loop = asyncio.get_event_loop()
task = loop.create_task(hello_world())
loop.run_until_complete(task)
loop.close()
