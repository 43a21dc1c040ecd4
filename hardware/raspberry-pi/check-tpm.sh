#!/bin/sh
# Is the TPM behind /dev/tpmrm0 the chip you bought, or something pretending to be one?
#
#   check-tpm.sh [-T TCTI] [--ca ROOT.pem] [--untrusted INTERMEDIATES.pem]
#
# Uses tpm2-tools and openssl only (Debian: tpm2-tools, openssl), so it does not depend on vitalseal.
# It reports, and judges:
#   1. the kernel driver behind the device (tpm_tis_spi for an SPI chip; tpm_vtpm_proxy means a
#      software TPM such as swtpm is plugged into the kernel);
#   2. TPM2_PT_MANUFACTURER and the vendor strings (tpm2_getcap properties-fixed): "IFX" and
#      "SLB9670" for an Infineon SLB9670, "IBM" and "SW TPM" for swtpm;
#   3. the endorsement key (EK) certificate the manufacturer stored in NV (RSA 2048 at 0x01c00002,
#      ECC P-256 at 0x01c0000a) and whether it chains to the manufacturer's root CA (--ca, with the
#      intermediates from --untrusted; the certificate's Authority Information Access names where the
#      issuer is published);
#   4. that this TPM holds the private half of that certified EK: a secret encrypted to the
#      certificate's public key (tpm2_makecredential, no TPM involved) comes back out of
#      tpm2_activatecredential. A certificate copied from another chip fails here.
# Verdict "genuine" needs 3 and 4 and no simulator sign.
#
# Exit status: 0 genuine; 2 not shown to be genuine (simulator, no EK certificate, chain or
# possession check failed, or no --ca given); 1 the check itself could not run.
set -u

tcti=${TPM2TOOLS_TCTI:-device:/dev/tpmrm0}
ca=""
untrusted=""
while [ $# -gt 0 ]; do
  case "$1" in
    -T|--tcti) tcti=$2; shift 2 ;;
    --ca) ca=$2; shift 2 ;;
    --untrusted) untrusted=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed -e 's/^# \{0,1\}//' -e '/^set -u/d'; exit 0 ;;
    *) echo "check-tpm: unknown argument $1 (see --help)" >&2; exit 1 ;;
  esac
done

for tool in tpm2_getcap tpm2_nvreadpublic tpm2_nvread tpm2_createek tpm2_createak tpm2_makecredential \
  tpm2_activatecredential tpm2_startauthsession tpm2_policysecret tpm2_flushcontext openssl od; do
  command -v "$tool" >/dev/null 2>&1 || { echo "check-tpm: $tool not found (Debian packages tpm2-tools, openssl)" >&2; exit 1; }
done
[ -z "$ca" ] || [ -r "$ca" ] || { echo "check-tpm: cannot read --ca $ca" >&2; exit 1; }
[ -z "$untrusted" ] || [ -r "$untrusted" ] || { echo "check-tpm: cannot read --untrusted $untrusted" >&2; exit 1; }

export TPM2TOOLS_TCTI="$tcti"
export TSS2_LOG="${TSS2_LOG:-all+NONE}"
work=$(mktemp -d "${TMPDIR:-/tmp}/check-tpm.XXXXXX") || exit 1
trap 'rm -rf "$work"' EXIT INT TERM
problems=""
problem() { problems="${problems}${problems:+; }$1"; }
# Without a resource manager (a simulator on a socket) objects stay loaded after each tool exits,
# and a TPM has only a few slots. With /dev/tpmrm0 this flushes nothing.
flush() { tpm2_flushcontext -t >/dev/null 2>&1; tpm2_flushcontext -s >/dev/null 2>&1; }

echo "tcti: $tcti"

# 1. The driver behind a device TCTI.
case "$tcti" in
  device:*)
    dev=${tcti#device:}
    name=$(basename "$dev")
    [ -e "$dev" ] || { echo "check-tpm: $dev does not exist (is the TPM enabled in the device tree / firmware?)" >&2; exit 1; }
    sys=/sys/class/tpmrm/$name/device
    [ -d "$sys" ] || sys=/sys/class/tpm/$(echo "$name" | sed 's/^tpmrm/tpm/')/device
    if [ -e "$sys/driver" ]; then
      driver=$(basename "$(readlink -f "$sys/driver")")
      echo "driver: $driver"
      case "$driver" in
        tpm_vtpm_proxy) problem "the kernel driver is tpm_vtpm_proxy: a software TPM (swtpm or similar) serves this device" ;;
      esac
    fi
    [ -r "$sys/tpm_version_major" ] && echo "tpm_version_major: $(cat "$sys/tpm_version_major")"
    ;;
esac

# 2. Fixed properties. tpm2_getcap prints "NAME:\n  raw: 0x...": the raw value is four ASCII bytes, big-endian.
if ! tpm2_getcap properties-fixed > "$work/props" 2> "$work/err"; then
  echo "check-tpm: tpm2_getcap failed: $(tail -n 3 "$work/err")" >&2
  exit 1
fi
raw() { awk -v p="$1:" '$1 == p { getline; print $2; exit }' "$work/props"; }
ascii() {
  v=$(raw "$1")
  [ -n "$v" ] || return 0
  for b in $(printf '%08x' "$v" | sed 's/../& /g'); do
    n=$(printf '%d' "0x$b")
    if [ "$n" -ge 32 ] && [ "$n" -lt 127 ]; then printf "\\$(printf '%03o' "$n")"; fi
  done
}
manufacturer=$(ascii TPM2_PT_MANUFACTURER | sed 's/ *$//')
vendor=$(for i in 1 2 3 4; do ascii "TPM2_PT_VENDOR_STRING_$i"; done | sed 's/  */ /g; s/^ //; s/ $//')
fw1=$(raw TPM2_PT_FIRMWARE_VERSION_1)
fw2=$(raw TPM2_PT_FIRMWARE_VERSION_2)
echo "manufacturer: $manufacturer"
echo "vendor: $vendor"
if [ -n "$fw1" ]; then
  echo "firmware: $(( fw1 >> 16 )).$(( fw1 & 0xffff ))${fw2:+.$(( fw2 >> 16 )).$(( fw2 & 0xffff ))}"
fi
simulator=no
case "$(echo "$vendor" | tr -d ' ' | tr '[:lower:]' '[:upper:]')" in
  SWTPM*|*XENO*|*SIMULATOR*) simulator=yes ;;
esac
echo "simulator: $simulator"
[ "$simulator" = yes ] && problem "the TPM says it is a simulator (vendor \"$vendor\")"

# 3. The EK certificate and its chain.
ek_alg=""
for entry in 0x1c00002:rsa 0x1c0000a:ecc; do
  index=${entry%%:*}
  if tpm2_nvreadpublic "$index" >/dev/null 2>&1 && tpm2_nvread "$index" -C "$index" -o "$work/ek.nv" >/dev/null 2>&1 \
    && openssl x509 -inform DER -in "$work/ek.nv" -out "$work/ek.pem" 2>/dev/null; then
    ek_alg=${entry#*:}
    echo "ek_certificate: $index ($ek_alg)"
    break
  fi
done
if [ -z "$ek_alg" ]; then
  echo "ek_certificate: none"
  problem "no EK certificate in NV (0x01c00002 RSA, 0x01c0000a ECC)"
else
  openssl x509 -in "$work/ek.pem" -noout -issuer | sed 's/^issuer=/ek_issuer: /'
  openssl x509 -in "$work/ek.pem" -noout -ext authorityInfoAccess 2>/dev/null | sed -n 's/^ *CA Issuers - URI:/ek_issuer_url: /p'
  if [ -n "$ca" ]; then
    if openssl verify -CAfile "$ca" ${untrusted:+-untrusted "$untrusted"} "$work/ek.pem" > "$work/verify" 2>&1; then
      echo "ek_chain: ok ($(openssl x509 -in "$ca" -noout -subject | sed 's/^subject=//'))"
    else
      echo "ek_chain: FAILED"
      sed 's/^/  /' "$work/verify"
      problem "the EK certificate does not chain to $ca"
    fi
  else
    echo "ek_chain: not checked (give --ca with the manufacturer's root certificate)"
    problem "the EK certificate's chain was not checked (no --ca)"
  fi

  # 4. Possession: only the TPM holding the certified EK's private key recovers the secret.
  openssl x509 -in "$work/ek.pem" -pubkey -noout > "$work/ek-cert-pub.pem"
  head -c 32 /dev/urandom > "$work/secret"
  flush
  if tpm2_createek -c "$work/ek.ctx" -G "$ek_alg" -u "$work/ek.pub" >/dev/null 2>"$work/err" && flush \
    && tpm2_createak -C "$work/ek.ctx" -c "$work/ak.ctx" -G ecc -g sha256 -s ecdsa -n "$work/ak.name" >/dev/null 2>>"$work/err" && flush \
    && tpm2_makecredential -T none -u "$work/ek-cert-pub.pem" -G "$ek_alg" -s "$work/secret" \
         -n "$(od -An -v -tx1 "$work/ak.name" | tr -d ' \n')" -o "$work/cred" >/dev/null 2>>"$work/err" \
    && tpm2_startauthsession --policy-session -S "$work/session" 2>>"$work/err" \
    && tpm2_policysecret -S "$work/session" -c e >/dev/null 2>>"$work/err" \
    && tpm2_activatecredential -c "$work/ak.ctx" -C "$work/ek.ctx" -i "$work/cred" -o "$work/recovered" \
         -P "session:$work/session" >/dev/null 2>>"$work/err" \
    && cmp -s "$work/secret" "$work/recovered"; then
    echo "ek_possession: ok"
  else
    echo "ek_possession: FAILED"
    problem "this TPM could not decrypt a credential made for the certificate's EK: the certificate is not this TPM's"
  fi
  [ -e "$work/session" ] && tpm2_flushcontext "$work/session" >/dev/null 2>&1
  flush
fi

if [ -z "$problems" ]; then
  echo "verdict: genuine"
  exit 0
fi
if [ "$simulator" = yes ]; then echo "verdict: simulator"; else echo "verdict: unverified"; fi
echo "reasons: $problems"
exit 2
