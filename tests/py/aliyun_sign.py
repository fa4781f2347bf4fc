"""The Alibaba Cloud IoT Platform MQTT login computed independently with Python's hmac,
as the platform documents it: prints client id, user name and password.

usage: aliyun_sign.py PRODUCT_KEY DEVICE_NAME CLIENT_ID DEVICE_SECRET TIMESTAMP_MS
"""

import hashlib
import hmac
import sys

pk, dn, cid, secret, ts = sys.argv[1:6]
params = {"productKey": pk, "deviceName": dn, "clientId": cid, "timestamp": ts}
content = "".join(k + params[k] for k in sorted(params))
print(f"{cid}|securemode=2,signmethod=hmacsha256,timestamp={ts}|")
print(f"{dn}&{pk}")
print(hmac.new(secret.encode(), content.encode(), hashlib.sha256).hexdigest())
