#!/bin/sh
# Write the appliance's identity into the wizard log, so that whoever reads the run's result
# (confd, an integrator, support) sees at a glance what this appliance was set up as.
set -eu

cat <<SUMMARY
entity:      $WIZARD_ENTITY_NAME
language:    $WIZARD_LANGUAGE
timezone:    $WIZARD_TIMEZONE
host:        $WIZARD_FQDN ($WIZARD_IP_ADDRESS/$WIZARD_NETMASK via $WIZARD_GATEWAY on $WIZARD_INTERFACE)
resolvers:   $WIZARD_NAMESERVERS
run:         $WIZARD_RUN_ID, as $(id -un)
SUMMARY
