"""A blocking synchronous function runs in the default thread pool via
loop.run_in_executor, without blocking the event loop. Seed: "Mixing Async and Sync".
"""

import asyncio
import time


def sync_task():
    print("Starting a slow sync task...")
    time.sleep(2)  # Simulating a long task (the seed sleeps 5 s; shortened to 2 s)
    print("Finished the slow task.")


async def async_wrapper():
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sync_task)


async def main():
    await asyncio.gather(
        async_wrapper(),
        # Imagine other async tasks here
    )


asyncio.run(main())
