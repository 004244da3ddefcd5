"""Bilibili live danmaku bridge: web protocol (WBI-signed room init) and the open platform.

Modules: ``protocol`` (sans-I/O packets), ``commands`` (web commands -> events), ``wbi`` (request signing),
``open_platform`` (signed open platform requests and messages), ``client`` (the async bridge).
Money: 1 CNY = 14 US cents-equivalent (``commands.CENTS_PER_CNY``); 1000 gold coins = 1 CNY.
"""

from chat_bridges.bilibili.client import BilibiliBridge

__all__ = ["BilibiliBridge"]
