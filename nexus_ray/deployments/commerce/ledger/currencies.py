"""ISO 4217 currencies the ledger accepts, with their minor-unit exponents.

An amount is an integer count of minor units (cents for USD, yen for JPY, fils for KWD);
a currency whose exponent is not known here is refused, because the ledger could not say
what an amount in it means. Funds and precious metals (XAU, XDR...) are left out on purpose.

Platform tokens (token-mgr) are currencies too, one per token, with codes ``QMA`` to ``QZZ``:
ISO 3166 leaves the country codes ``QM`` to ``QZ`` to private use, so ISO 4217 will never give
a currency such a code. Their amounts are counts of the token's base unit (exponent 0).
"""

from __future__ import annotations

import re

#: code -> exponent (digits after the decimal point of one major unit).
EXPONENTS: dict[str, int] = {
    # three decimals
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    # no minor unit
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
                     "VND", "VUV", "XAF", "XOF", "XPF"), 0),
    # four decimals
    **dict.fromkeys(("CLF", "UYW"), 4),
    # two decimals: everything else in circulation
    **dict.fromkeys((
        "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD", "BDT", "BGN", "BMD",
        "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN", "BZD", "CAD", "CDF", "CHF", "CNY", "COP", "CRC", "CUP",
        "CVE", "CZK", "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS", "GIP",
        "GMD", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR", "IRR", "JMD", "KES", "KGS", "KHR",
        "KPW", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "MAD", "MDL", "MGA", "MKD", "MMK", "MNT", "MOP",
        "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD", "NGN", "NIO", "NOK", "NPR", "NZD", "PAB", "PEN",
        "PGK", "PHP", "PKR", "PLN", "QAR", "RON", "RSD", "RUB", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD", "SHP",
        "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT", "TOP", "TRY", "TTD", "TWD",
        "TZS", "UAH", "USD", "UYU", "UZS", "VES", "WST", "XCD", "YER", "ZAR", "ZMW", "ZWG",
    ), 2),
}


TOKEN_CODE = re.compile(r"^Q[M-Z][A-Z]$")
"""Codes of platform tokens: private-use, never an ISO 4217 currency."""


def is_token(code: str) -> bool:
    """True for the code of a platform token (``QMA``..``QZZ``)."""
    return bool(TOKEN_CODE.match(code))


def known(code: str) -> bool:
    """True for an ISO 4217 code whose exponent the ledger knows, or a platform token's code."""
    return code in EXPONENTS or is_token(code)
